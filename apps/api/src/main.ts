import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { type FastifyInstance, type FastifyReply, type FastifyRequest, LogController } from 'fastify';
import { AppModule, type AppModuleOptions } from './app.module.js';
import { pathOf } from './common/http/problem.filter.js';
import { requestContextOf } from './common/http/request-context.js';
import { createRootLogger, PinoNestLogger, type RootLogger } from './common/logging/logger.js';
import { ConfigError, type HangarConfig, loadConfig } from './config/hangar-config.js';
import { OpenApiService, type ServedRoute } from './modules/openapi/openapi.service.js';

/** Options of {@link createHttpApp} and {@link startHangar}. */
export interface CreateHttpAppOptions {
  /** Logger to use (default: a new root logger from the config). */
  readonly logger?: RootLogger;
  /** Modules mounted next to the role's own (tests add controllers this way). */
  readonly extraModules?: AppModuleOptions['extraModules'];
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Builds the HTTP application (not listening yet): Nest on Fastify with the api's conventions —
 * JSON bodies only (anything else is a 415), the configured body limit (413 beyond), request ids
 * (`X-Request-Id`, taken from the client when it is sane), one access-log line per request — then
 * initialises it and checks that every served route is a documented `@Endpoint`.
 */
export async function createHttpApp(
  config: HangarConfig,
  options: CreateHttpAppOptions = {},
): Promise<NestFastifyApplication> {
  const logger = options.logger ?? createRootLogger(config);
  const adapter = new FastifyAdapter({
    loggerInstance: logger.child({ component: 'http' }),
    // The access log below writes one line per request; Fastify's own two would double it.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.http.bodyLimitBytes,
    trustProxy: config.http.trustProxy,
    requestIdHeader: false,
    genReqId: (raw: IncomingMessage) => {
      const given = raw.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
  });
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(config, options), adapter, {
    logger: new PinoNestLogger(logger),
    bodyParser: false,
    abortOnError: false,
  });
  const fastify = app.getHttpAdapter().getInstance() as unknown as FastifyInstance;
  configureFastify(fastify, config, logger);
  const served: ServedRoute[] = [];
  fastify.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) served.push({ method, url: route.url ?? route.path });
  });
  await app.init();
  const undocumented = app.get(OpenApiService).undocumentedRoutes(served);
  if (undocumented.length > 0) {
    await app.close();
    throw new Error(
      `routes without @Endpoint (not validated, not documented): ${undocumented.map((r) => `${r.method} ${r.url}`).join(', ')}`,
    );
  }
  return app;
}

function configureFastify(fastify: FastifyInstance, config: HangarConfig, logger: RootLogger): void {
  // Only JSON: a form or text body is a 415, not a string the schemas then reject with a 400.
  fastify.removeAllContentTypeParsers();
  const jsonParser = fastify.getDefaultJsonParser('error', 'error');
  for (const type of ['application/json', /^application\/[a-z0-9.+-]+\+json$/]) {
    fastify.addContentTypeParser(
      type,
      { parseAs: 'string', bodyLimit: config.http.bodyLimitBytes },
      jsonParser,
    );
  }
  fastify.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done) => {
    reply.header('x-request-id', request.id);
    done();
  });
  // Once closing, answers to in-flight requests close their keep-alive connection, so the server
  // can finish closing as soon as the last of them is answered.
  let closing = false;
  fastify.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (closing) reply.header('connection', 'close');
    done(null, payload);
  });
  if (config.http.accessLog) {
    const access = logger.child({ component: 'access' });
    fastify.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done) => {
      const caller = requestContextOf(request);
      access.info(
        {
          req_id: request.id,
          method: request.method,
          path: pathOf(request.url),
          status: reply.statusCode,
          ms: Math.round(reply.elapsedTime * 10) / 10,
          ...(caller ? { project: caller.projectId, key: caller.keyPrefix } : {}),
        },
        'request',
      );
      done();
    });
  }
}

/** A running Hangar process: its HTTP server (roles api/all) or its worker context. */
export interface RunningHangar {
  readonly app: INestApplicationContext;
  /** `http://host:port` when the process serves HTTP. */
  readonly url: string | undefined;
  close(): Promise<void>;
}

/**
 * Starts the process's role: `api` and `all` listen on HTTP (and the feature modules start the
 * AgentGateway and, for `all`, the workers); `worker` runs the modules without an HTTP server.
 */
export async function startHangar(
  config: HangarConfig,
  options: CreateHttpAppOptions = {},
): Promise<RunningHangar> {
  const logger = options.logger ?? createRootLogger(config);
  if (config.role === 'worker') {
    const app = await NestFactory.createApplicationContext(AppModule.forRoot(config, options), {
      logger: new PinoNestLogger(logger),
      abortOnError: false,
    });
    await app.init();
    return { app, url: undefined, close: () => app.close() };
  }
  const app = await createHttpApp(config, { ...options, logger });
  await app.listen({ host: config.http.host, port: config.http.port });
  const address = app.getHttpServer().address();
  const url =
    address !== null && typeof address === 'object'
      ? `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`
      : undefined;
  return { app, url, close: () => closeGracefully(app) };
}

/**
 * Closes the HTTP server first — no new connections, new requests on open ones get 503, requests
 * in flight finish — and only then the application (workers, gateway, database). Nest alone
 * would run the modules' destroy hooks, disconnecting the database, before closing the server,
 * failing the requests still in flight.
 */
async function closeGracefully(app: NestFastifyApplication): Promise<void> {
  await (app.getHttpAdapter().getInstance() as unknown as FastifyInstance).close();
  await app.close();
}

/**
 * Closes the process on SIGTERM/SIGINT: stops accepting connections (new requests get 503),
 * lets in-flight requests and jobs finish, disconnects, exits 0 — or exits 1 when that takes
 * longer than `HANGAR_SHUTDOWN_TIMEOUT_MS`. A second signal exits at once.
 */
export function exitOnSignals(running: RunningHangar, config: HangarConfig, logger: RootLogger): void {
  let closing = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (closing) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    closing = true;
    logger.info({ signal }, 'shutting down');
    const timer = setTimeout(() => {
      logger.error({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown timed out: exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    running.close().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

async function main(): Promise<void> {
  let config: HangarConfig;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`hangar-api: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createRootLogger(config);
  try {
    const running = await startHangar(config, { logger });
    exitOnSignals(running, config, logger);
    logger.info({ url: running.url }, 'hangar api started');
  } catch (error) {
    logger.fatal({ err: error }, 'start failed');
    process.exit(1);
  }
}

/** True when this file is the process's entry point (`node dist/main.js`), not an import. */
function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) await main();
