import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Tests start real servers on random ports; a slow shared machine must not turn that into flakes.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    projects: [
      {
        extends: true,
        test: {
          name: 'node',
          environment: 'node',
          include: [
            'services/*/src/**/*.test.ts',
            'services/*/tests/**/*.test.ts',
            'operator/src/**/*.test.ts',
            'operator/tests/**/*.test.ts',
            'test/**/*.test.ts',
            // The webmail's stores and API client, against real services: no DOM needed.
            'webmail/src/**/*.test.ts',
          ],
        },
      },
      {
        // The webmail's components, rendered with Testing Library in jsdom.
        extends: true,
        plugins: [react()],
        test: {
          name: 'webmail',
          environment: 'jsdom',
          include: ['webmail/src/**/*.test.tsx'],
          setupFiles: ['webmail/src/test-setup.ts'],
        },
      },
    ],
  },
});
