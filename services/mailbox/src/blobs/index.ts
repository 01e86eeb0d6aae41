export * from './blob-store.js';
export * from './range.js';
