/** QMP client in layers: wire protocol, monitor (connection, timeouts, events), typed commands. */
export * from './commands.js';
export * from './errors.js';
export * from './monitor.js';
export * from './protocol.js';
