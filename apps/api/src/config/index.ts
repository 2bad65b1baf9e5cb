/** The api's configuration: validated once from the environment, injected everywhere else. */
export * from './config.module.js';
export * from './hangar-config.js';
