/**
 * Hosts as operators manage them (`/v1/hosts`) and join tokens (`/v1/join-tokens`), with
 * `redeemJoinToken` for the AgentGateway's Register.
 */
export * from './host.schemas.js';
export * from './hosts.controller.js';
export * from './hosts.module.js';
export * from './hosts.service.js';
export * from './join-token.js';
export * from './join-tokens.controller.js';
export * from './join-tokens.service.js';
