import type { LoggerService } from '@nestjs/common';
import { pino } from 'pino';
import type { HangarConfig } from '../../config/hangar-config.js';

/** The process's root logger: JSON lines on stdout (pino), one per event. */
export type RootLogger = pino.Logger;

/**
 * Creates the root logger. Authorization headers and API keys are redacted wherever they appear,
 * so a debug dump of a request cannot leak a secret into the logs.
 */
export function createRootLogger(
  config: Pick<HangarConfig, 'logLevel' | 'role'>,
  destination?: pino.DestinationStream,
): RootLogger {
  const options: pino.LoggerOptions = {
    level: config.logLevel,
    base: { service: 'hangar-api', role: config.role, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: [
        'req.headers.authorization',
        'headers.authorization',
        'authorization',
        'secret',
        '*.secret',
        'token',
        '*.token',
      ],
      censor: '[redacted]',
    },
    formatters: { level: (label) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}

/** Nest's logger interface over pino: Nest's own messages and `new Logger(ctx)` end up as JSON lines too. */
export class PinoNestLogger implements LoggerService {
  constructor(private readonly logger: RootLogger) {}

  log(message: unknown, ...optional: unknown[]): void {
    this.write('info', message, optional);
  }

  error(message: unknown, ...optional: unknown[]): void {
    this.write('error', message, optional);
  }

  warn(message: unknown, ...optional: unknown[]): void {
    this.write('warn', message, optional);
  }

  debug(message: unknown, ...optional: unknown[]): void {
    this.write('debug', message, optional);
  }

  verbose(message: unknown, ...optional: unknown[]): void {
    this.write('trace', message, optional);
  }

  fatal(message: unknown, ...optional: unknown[]): void {
    this.write('fatal', message, optional);
  }

  private write(level: pino.Level, message: unknown, optional: unknown[]): void {
    if (!this.logger.isLevelEnabled(level)) return;
    // Nest passes the context (a class name) last, and for errors a stack before it.
    const context =
      typeof optional[optional.length - 1] === 'string' ? (optional.pop() as string) : undefined;
    const stack =
      typeof optional[0] === 'string' && level === 'error' ? (optional.shift() as string) : undefined;
    const fields: Record<string, unknown> = {};
    if (context) fields.context = context;
    if (stack) fields.stack = stack;
    if (message instanceof Error) {
      this.logger[level]({ ...fields, err: message }, message.message);
    } else if (typeof message === 'string') {
      this.logger[level](fields, message);
    } else {
      this.logger[level]({ ...fields, data: message }, 'log');
    }
  }
}
