import { type DestinationStream, type Logger, pino } from 'pino';

export type { Logger } from 'pino';

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  level?: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Fields every line carries (host name, agent instance). */
  base?: Record<string, unknown>;
  /** Where lines go; stdout when unset. */
  destination?: DestinationStream;
}

/**
 * The agent's logger: one JSON object per line on stdout (pino), so journald, Loki or `jq` read it
 * without a parser of ours. Times are ISO strings because operators grep for them.
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      base: { service: 'hangar-agent', pid: process.pid, ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ fd: 1, sync: true }),
  );
}
