export * from './logger.js';
export * from './metrics.js';
export * from './server.js';
export * from './db.js';
export * from './http-client.js';
export * from './dns-server.js';
export * from './dns-client.js';
export * from './replay-store.js';
