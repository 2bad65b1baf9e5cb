/** The AgentGateway's domain side: Register, Session reports, host liveness and join tokens. */
export * from './gateway.module.js';
export * from './gateway.service.js';
export * from './host-liveness.service.js';
