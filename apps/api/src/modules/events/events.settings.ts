import { Inject } from '@nestjs/common';
import { z } from 'zod';

/**
 * Tuning of the event feed behind `GET /v1/events/stream` (ADR 0041), validated once from the
 * environment. The defaults suit production; tests shorten the keep-alive.
 */
export const EventsEnvSchema = z.object({
  /** How often the feed reads new event rows while a stream is open. */
  HANGAR_EVENTS_POLL_MS: z.coerce.number().int().min(20).max(10_000).default(250),
  /** A comment line is sent on an idle stream this often (proxies close silent connections). */
  HANGAR_EVENTS_KEEPALIVE_MS: z.coerce.number().int().min(100).max(300_000).default(15_000),
  /**
   * A missing event id is waited for at least this long before the transactions that might
   * still commit it are checked (ADR 0041: ids are taken before their transaction commits).
   */
  HANGAR_EVENTS_GAP_GRACE_MS: z.coerce.number().int().min(50).max(60_000).default(500),
  /** A missing id is given up after this long even if a transaction that may hold it still runs. */
  HANGAR_EVENTS_GAP_MAX_WAIT_MS: z.coerce.number().int().min(1_000).max(600_000).default(30_000),
});

/** The validated tuning; see {@link EventsEnvSchema} for what each value means. */
export interface EventsSettings {
  readonly pollMs: number;
  readonly keepAliveMs: number;
  readonly gapGraceMs: number;
  readonly gapMaxWaitMs: number;
  /** Settled events kept in memory for streams that are caught up (older ones come from SQL). */
  readonly memoryEvents: number;
  /** Events one stream reads per query. */
  readonly batchSize: number;
  /** The SSE `retry:` a client waits before reconnecting. */
  readonly retryMs: number;
}

/** Injection token of the {@link EventsSettings}. */
export const EVENTS_SETTINGS = Symbol('EVENTS_SETTINGS');

/** Injects the settings: `constructor(@InjectEventsSettings() settings: EventsSettings)`. */
export const InjectEventsSettings = (): ParameterDecorator => Inject(EVENTS_SETTINGS);

/**
 * Reads the settings from `env` (empty strings count as unset).
 *
 * @throws Error naming every invalid variable
 */
export function loadEventsSettings(
  env: Readonly<Record<string, string | undefined>> = process.env,
): EventsSettings {
  const input: Record<string, string> = {};
  for (const key of Object.keys(EventsEnvSchema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== '') input[key] = value;
  }
  const parsed = EventsEnvSchema.safeParse(input);
  if (!parsed.success) {
    throw new Error(
      `invalid configuration: ${parsed.error.issues.map((i) => `${String(i.path[0])}: ${i.message}`).join('; ')}`,
    );
  }
  const e = parsed.data;
  return eventsSettings({
    pollMs: e.HANGAR_EVENTS_POLL_MS,
    keepAliveMs: e.HANGAR_EVENTS_KEEPALIVE_MS,
    gapGraceMs: e.HANGAR_EVENTS_GAP_GRACE_MS,
    gapMaxWaitMs: e.HANGAR_EVENTS_GAP_MAX_WAIT_MS,
  });
}

/** Settings from partial values (tests), with the same defaults as the environment. */
export function eventsSettings(over: Partial<EventsSettings> = {}): EventsSettings {
  return {
    pollMs: over.pollMs ?? 250,
    keepAliveMs: over.keepAliveMs ?? 15_000,
    gapGraceMs: over.gapGraceMs ?? 500,
    gapMaxWaitMs: over.gapMaxWaitMs ?? 30_000,
    memoryEvents: over.memoryEvents ?? 5_000,
    batchSize: over.batchSize ?? 500,
    retryMs: over.retryMs ?? 2_000,
  };
}
