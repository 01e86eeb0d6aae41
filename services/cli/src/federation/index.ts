export * from './layout.js';
export * from './state.js';
export * from './domain-services.js';
export * from './local-federation.js';
export * from './webmail-server.js';
export * from './webmail-build.js';
