export * from './blobs/index.js';
export * from './storage/migrations.js';
export * from './storage/index.js';
export * from './config.js';
export * from './service.js';
export * from './api/user-auth.js';
export * from './api/resources.js';
export * from './mta/as-client.js';
