/**
 * @hangar/agent: the per-host agent. Embed it (`new Agent({ config })`), run it as `hangar-agent`,
 * or use its parts: the runtime over vmm-core and the HostAgent gRPC service.
 */
export {
  Agent,
  type AgentOptions,
  type AgentSession,
  buildHostNetwork,
  buildHypervisor,
  controlSessionFactory,
  HOST_AGENT_SERVICE_NAME,
  type SessionContext,
  type SessionFactory,
} from './agent.js';
export {
  type AgentConfig,
  AgentConfigError,
  type AgentConfigInput,
  AgentConfigSchema,
  isLoopback,
  loadAgentConfig,
} from './config/agent-config.js';
export { HostAgentService, MAX_CONSOLE_TAIL_BYTES } from './grpc/host-agent.service.js';
export * from './grpc/mappers.js';
export { serverCredentials } from './grpc/server-credentials.js';
export {
  AGENT_ERROR_STATUS,
  ERROR_CODE_METADATA_KEY,
  type GrpcErrorStatus,
  toGrpcStatus,
  VMM_ERROR_STATUS,
} from './grpc/status-map.js';
export { createLogger, type Logger, type LoggerOptions } from './log.js';
export { DriftTracker, isDrift } from './reconciler/drift.js';
export { AgentError, type AgentErrorCode, isAgentError } from './runtime/agent-error.js';
export { type HostNetwork, NoopHostNetwork } from './runtime/host-network.js';
export { AGENT_VERSION, probeHostInfo, samplePools } from './runtime/host-probe.js';
export {
  DEFAULT_OPERATION_HISTORY,
  fingerprint,
  type OperationRecord,
  type VmRecord,
  VmStateStore,
} from './runtime/state-store.js';
export { STORAGE_TOKEN_DIR, STORAGE_TOKEN_TTL_MS } from './runtime/storage-token.js';
export {
  assertOperationId,
  assertVmId,
  type CallContext,
  OPERATION_ID_PATTERN,
  type StartupReport,
  VmRuntime,
  type VmRuntimeOptions,
} from './runtime/vm-runtime.js';
export type { AgentInventory, InventoryVm } from './session/inventory.js';
export {
  SIMULATED_HOST_LABELS,
  SimulatedAgent,
  type SimulatedAgentOptions,
} from './sim/simulated-agent.js';
export {
  type AgentSelector,
  AgentSimulator,
  type SimulatorOptions,
  type SimulatorSummary,
  type SimulatorTls,
} from './sim/simulator.js';
