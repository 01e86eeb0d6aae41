export * from './storage/migrations.js';
export * from './storage/adapter.js';
export * from './storage/users.js';
export * from './storage/throttle.js';
