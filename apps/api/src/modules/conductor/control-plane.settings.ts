import { Inject } from '@nestjs/common';
import { z } from 'zod';

/**
 * Tuning of the VM backend (gateway, conductor, sweeper, metrics), validated once from the
 * environment. Kept apart from HangarConfig until it joins it; every variable has a default that
 * suits production, tests shorten the intervals.
 */
export const ControlPlaneEnvSchema = z.object({
  /** Agents heartbeat this often (sent to them on Register). */
  HANGAR_HEARTBEAT_INTERVAL_MS: z.coerce.number().int().min(100).max(600_000).default(5_000),
  /** Agents send metrics this often. */
  HANGAR_METRICS_INTERVAL_MS: z.coerce.number().int().min(100).max(3_600_000).default(10_000),
  /** Missed heartbeats before a host is DOWN. */
  HANGAR_MISSED_HEARTBEATS: z.coerce.number().int().min(1).max(100).default(3),
  /** How often the workers check host liveness (default: half a heartbeat interval). */
  HANGAR_LIVENESS_CHECK_MS: z.coerce.number().int().min(100).max(600_000).optional(),
  /** Operations one worker process runs at once. */
  HANGAR_WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(8),
  /** BullMQ job lock: a crashed worker's job is taken over this long after its last renewal. */
  HANGAR_WORKER_LOCK_MS: z.coerce.number().int().min(1_000).max(600_000).default(30_000),
  /** How often BullMQ looks for jobs whose worker died (stalled jobs). */
  HANGAR_WORKER_STALLED_CHECK_MS: z.coerce.number().int().min(500).max(600_000).default(30_000),
  /** Tries per operation for transient agent errors (the first included). */
  HANGAR_OPERATION_ATTEMPTS: z.coerce.number().int().min(1).max(100).default(8),
  /** First retry delay; doubles on each retry. */
  HANGAR_OPERATION_BACKOFF_MS: z.coerce.number().int().min(10).max(600_000).default(1_000),
  /** How often the sweeper re-enqueues unfinished operations whose job is gone. */
  HANGAR_SWEEP_INTERVAL_MS: z.coerce.number().int().min(100).max(3_600_000).default(15_000),
  /** Operations younger than this (since their last update) are left alone by the sweeper. */
  HANGAR_SWEEP_GRACE_MS: z.coerce.number().int().min(0).max(3_600_000).default(10_000),
  /** How long the latest metrics sample of a VM or host is kept without a newer one. */
  HANGAR_METRICS_TTL_MS: z.coerce.number().int().min(1_000).max(86_400_000).default(600_000),
  /** Storage pools for VM disks, by preference (the first one the host has). */
  HANGAR_VM_DISK_POOLS: z
    .string()
    .regex(/^[A-Za-z][A-Za-z0-9_-]{0,31}(,[A-Za-z][A-Za-z0-9_-]{0,31})*$/)
    .default('shared,local'),
});

/** The validated tuning; see {@link ControlPlaneEnvSchema} for what each value means. */
export interface ControlPlaneSettings {
  readonly heartbeatIntervalMs: number;
  readonly metricsIntervalMs: number;
  readonly missedHeartbeats: number;
  readonly livenessCheckMs: number;
  readonly workerConcurrency: number;
  readonly workerLockMs: number;
  readonly workerStalledCheckMs: number;
  readonly operationAttempts: number;
  readonly operationBackoffMs: number;
  readonly sweepIntervalMs: number;
  readonly sweepGraceMs: number;
  readonly metricsTtlMs: number;
  readonly vmDiskPools: readonly string[];
}

/** Injection token of the {@link ControlPlaneSettings}. */
export const CONTROL_PLANE_SETTINGS = Symbol('CONTROL_PLANE_SETTINGS');

/** Injects the settings: `constructor(@InjectControlPlaneSettings() settings: ControlPlaneSettings)`. */
export const InjectControlPlaneSettings = (): ParameterDecorator => Inject(CONTROL_PLANE_SETTINGS);

/**
 * Reads the settings from `env` (empty strings count as unset).
 *
 * @throws Error naming every invalid variable
 */
export function loadControlPlaneSettings(
  env: Readonly<Record<string, string | undefined>> = process.env,
): ControlPlaneSettings {
  const input: Record<string, string> = {};
  for (const key of Object.keys(ControlPlaneEnvSchema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== '') input[key] = value;
  }
  const parsed = ControlPlaneEnvSchema.safeParse(input);
  if (!parsed.success) {
    throw new Error(
      `invalid configuration: ${parsed.error.issues.map((i) => `${String(i.path[0])}: ${i.message}`).join('; ')}`,
    );
  }
  const e = parsed.data;
  return controlPlaneSettings({
    heartbeatIntervalMs: e.HANGAR_HEARTBEAT_INTERVAL_MS,
    metricsIntervalMs: e.HANGAR_METRICS_INTERVAL_MS,
    missedHeartbeats: e.HANGAR_MISSED_HEARTBEATS,
    ...(e.HANGAR_LIVENESS_CHECK_MS !== undefined ? { livenessCheckMs: e.HANGAR_LIVENESS_CHECK_MS } : {}),
    workerConcurrency: e.HANGAR_WORKER_CONCURRENCY,
    workerLockMs: e.HANGAR_WORKER_LOCK_MS,
    workerStalledCheckMs: e.HANGAR_WORKER_STALLED_CHECK_MS,
    operationAttempts: e.HANGAR_OPERATION_ATTEMPTS,
    operationBackoffMs: e.HANGAR_OPERATION_BACKOFF_MS,
    sweepIntervalMs: e.HANGAR_SWEEP_INTERVAL_MS,
    sweepGraceMs: e.HANGAR_SWEEP_GRACE_MS,
    metricsTtlMs: e.HANGAR_METRICS_TTL_MS,
    vmDiskPools: e.HANGAR_VM_DISK_POOLS.split(','),
  });
}

/** Settings from partial values (tests), with the same defaults as the environment. */
export function controlPlaneSettings(over: Partial<ControlPlaneSettings> = {}): ControlPlaneSettings {
  const heartbeatIntervalMs = over.heartbeatIntervalMs ?? 5_000;
  return {
    heartbeatIntervalMs,
    metricsIntervalMs: over.metricsIntervalMs ?? 10_000,
    missedHeartbeats: over.missedHeartbeats ?? 3,
    livenessCheckMs: over.livenessCheckMs ?? Math.max(100, Math.round(heartbeatIntervalMs / 2)),
    workerConcurrency: over.workerConcurrency ?? 8,
    workerLockMs: over.workerLockMs ?? 30_000,
    workerStalledCheckMs: over.workerStalledCheckMs ?? 30_000,
    operationAttempts: over.operationAttempts ?? 8,
    operationBackoffMs: over.operationBackoffMs ?? 1_000,
    sweepIntervalMs: over.sweepIntervalMs ?? 15_000,
    sweepGraceMs: over.sweepGraceMs ?? 10_000,
    metricsTtlMs: over.metricsTtlMs ?? 600_000,
    vmDiskPools: over.vmDiskPools ?? ['shared', 'local'],
  };
}

/** The settings as environment variables (to start a worker process with the same tuning). */
export function controlPlaneSettingsEnv(settings: ControlPlaneSettings): Record<string, string> {
  return {
    HANGAR_HEARTBEAT_INTERVAL_MS: String(settings.heartbeatIntervalMs),
    HANGAR_METRICS_INTERVAL_MS: String(settings.metricsIntervalMs),
    HANGAR_MISSED_HEARTBEATS: String(settings.missedHeartbeats),
    HANGAR_LIVENESS_CHECK_MS: String(settings.livenessCheckMs),
    HANGAR_WORKER_CONCURRENCY: String(settings.workerConcurrency),
    HANGAR_WORKER_LOCK_MS: String(settings.workerLockMs),
    HANGAR_WORKER_STALLED_CHECK_MS: String(settings.workerStalledCheckMs),
    HANGAR_OPERATION_ATTEMPTS: String(settings.operationAttempts),
    HANGAR_OPERATION_BACKOFF_MS: String(settings.operationBackoffMs),
    HANGAR_SWEEP_INTERVAL_MS: String(settings.sweepIntervalMs),
    HANGAR_SWEEP_GRACE_MS: String(settings.sweepGraceMs),
    HANGAR_METRICS_TTL_MS: String(settings.metricsTtlMs),
    HANGAR_VM_DISK_POOLS: settings.vmDiskPools.join(','),
  };
}
