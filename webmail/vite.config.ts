import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';
import { budget, icons, serviceWorker } from './build/plugins.js';

export default defineConfig(({ command }) => {
  // A build is a production build whoever starts it: under a test runner (NODE_ENV=test) Vite would
  // otherwise ship React's development bundle and a page that does not register its service worker.
  // Vite reads NODE_ENV after loading this file, and documents setting it here.
  if (command === 'build') process.env.NODE_ENV = 'production';
  return {
    plugins: [react(), icons(), serviceWorker({ entry: 'src/sw/sw.ts' }), budget({ limitBytes: 250_000 })],
    build: {
      outDir: 'dist',
      emptyOutDir: true,
      // Hashed file names: the server may cache /assets/ forever (immutable).
      assetsDir: 'assets',
      target: 'es2022',
    },
  };
});
