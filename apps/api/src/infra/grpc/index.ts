/** The gRPC server of hangar.control.v1.AgentGateway (agents dial in). */
export * from './agent-gateway.server.js';
