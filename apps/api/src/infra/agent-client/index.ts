/** gRPC clients of the agents' HostAgent service: a pool per address, deadlines, error classes. */
export * from './agent-call.error.js';
export * from './agent-client.module.js';
export * from './agent-client.pool.js';
export * from './vm-state.mapping.js';
