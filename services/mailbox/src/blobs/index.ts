export * from './blob-store.js';
export * from './blob-reader.js';
export * from './range.js';
