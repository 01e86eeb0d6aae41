import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: [
      'services/*/src/**/*.test.ts',
      'services/*/tests/**/*.test.ts',
      'operator/src/**/*.test.ts',
      'operator/tests/**/*.test.ts',
      'test/**/*.test.ts',
    ],
    // Tests start real servers on random ports; a slow shared machine must not turn that into flakes.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
