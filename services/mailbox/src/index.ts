export * from './blobs/index.js';
export * from './storage/migrations.js';
