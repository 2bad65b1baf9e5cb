/**
 * Hangar's gRPC contracts. The generated modules (src/gen, from `npm run generate`) are
 * re-exported under one namespace per protobuf package.
 */
export * as agentv1 from './gen/hangar/agent/v1/agent.js';
export * as controlv1 from './gen/hangar/control/v1/control.js';

/** The agent <-> control plane protocol version this build speaks (RegisterRequest.protocol_version). */
export const PROTOCOL_VERSION = 1;
