import { type ArgumentsHost, Catch, type ExceptionFilter, Logger } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import { PROBLEM_CONTENT_TYPE, toProblem } from '../../errors/problem.js';

/**
 * The one exception filter of the HTTP api: everything a request throws — domain errors, other
 * layers' coded errors, Fastify's parser errors (bad JSON, media type, body size), unknown routes,
 * bugs — leaves as an RFC 9457 `application/problem+json` response ({@link toProblem}). Unexpected
 * errors are logged with their stack and answered as a 500 INTERNAL that reveals nothing but the
 * request id.
 */
@Catch()
export class ProblemFilter implements ExceptionFilter {
  private readonly logger = new Logger('http');

  constructor(private readonly adapterHost: HttpAdapterHost) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    if (host.getType() !== 'http') throw exception;
    const http = host.switchToHttp();
    const request = http.getRequest<FastifyRequest>();
    const response: unknown = http.getResponse();
    const requestId = String(request.id ?? 'unknown');
    const problem = toProblem(exception, { path: pathOf(request.url ?? '/'), requestId });
    if (problem.unexpected) {
      const error = exception instanceof Error ? exception : new Error(String(exception));
      this.logger.error(
        `${request.method} ${pathOf(request.url ?? '/')} failed (request ${requestId}): ${error.stack ?? error.message}`,
      );
    }
    const adapter = this.adapterHost.httpAdapter;
    if (adapter.isHeadersSent(response)) return;
    for (const [name, value] of Object.entries(problem.headers)) adapter.setHeader(response, name, value);
    adapter.setHeader(response, 'content-type', `${PROBLEM_CONTENT_TYPE}; charset=utf-8`);
    adapter.reply(response, JSON.stringify(problem.body), problem.status);
  }
}

/** The path of a request URL, without its query string (a problem's `instance`). */
export function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}
