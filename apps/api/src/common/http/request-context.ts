import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import type { ApiKeyRole } from '../../gen/prisma/enums.js';

/** Who is calling: the authenticated API key and the project it acts in. */
export interface RequestContext {
  /** The request's id (`X-Request-Id`, logs, problems). */
  readonly requestId: string;
  readonly keyId: string;
  /** The key's public prefix (`hgr_<prefix>_…`), for logs. */
  readonly keyPrefix: string;
  readonly projectId: string;
  readonly role: ApiKeyRole;
}

const CONTEXT = Symbol('hangar:context');
type WithContext = FastifyRequest & { [CONTEXT]?: RequestContext };

/** Attaches the caller to the request (the auth guard does it once per request). */
export function setRequestContext(request: FastifyRequest, context: RequestContext): void {
  (request as WithContext)[CONTEXT] = context;
}

/** The caller of an authenticated request; undefined on public routes and before the guard ran. */
export function requestContextOf(request: FastifyRequest): RequestContext | undefined {
  return (request as WithContext)[CONTEXT];
}

/** Whether the caller runs the cluster (role admin): it may see and change every project. */
export function isAdmin(context: RequestContext): boolean {
  return context.role === 'admin';
}

/**
 * The caller of the request: `handler(@Ctx() ctx: RequestContext)`. Only on authenticated
 * routes; on a `@Public()` route it is a programming error.
 */
export const Ctx = createParamDecorator((_data: unknown, context: ExecutionContext): RequestContext => {
  const found = requestContextOf(context.switchToHttp().getRequest<FastifyRequest>());
  if (!found) {
    throw new Error(
      `${context.getClass().name}.${context.getHandler().name} reads @Ctx() on an unauthenticated route`,
    );
  }
  return found;
});
