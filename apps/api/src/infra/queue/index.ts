/** BullMQ producers: the operations queue (one job per operation) and the maintenance queue name. */
export * from './operation-queue.js';
export * from './queue.module.js';
