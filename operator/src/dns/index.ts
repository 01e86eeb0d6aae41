export * from './tsig.js';
export * from './rfc2136.js';
