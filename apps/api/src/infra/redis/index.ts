/** The control plane's Redis: short-lived data and BullMQ connections under one key prefix. */
export * from './redis.module.js';
export * from './redis.service.js';
