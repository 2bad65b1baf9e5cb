import { type CanActivate, type ExecutionContext, Injectable } from '@nestjs/common';
import type { FastifyRequest } from 'fastify';
import { isPublic, requiredRoles, SAFE_METHODS } from '../../common/http/access.decorators.js';
import { setRequestContext } from '../../common/http/request-context.js';
import { DomainError } from '../../errors/domain-error.js';
import { AuthService } from './auth.service.js';

const CHALLENGE = 'Bearer realm="hangar"';

/**
 * The global guard: every route needs `Authorization: Bearer <api key>` unless `@Public()`.
 * Missing or invalid keys are a 401 (with a `WWW-Authenticate` challenge); a `reader` key on
 * anything but GET/HEAD, or a role the route's `@Roles()` does not list, is a 403. On success the
 * caller's {@link RequestContext} is attached to the request (`@Ctx()`).
 */
@Injectable()
export class AuthGuard implements CanActivate {
  constructor(private readonly auth: AuthService) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (context.getType() !== 'http') return true;
    const controller = context.getClass();
    const handler = context.getHandler();
    if (isPublic(controller, handler)) return true;
    const request = context.switchToHttp().getRequest<FastifyRequest>();

    const header = request.headers.authorization;
    if (header === undefined || header.trim() === '') {
      throw new DomainError(
        'UNAUTHENTICATED',
        'This request needs an API key: Authorization: Bearer <key>.',
        {
          headers: { 'WWW-Authenticate': CHALLENGE },
        },
      );
    }
    const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    const key = match?.[1] === undefined ? undefined : await this.auth.verify(match[1]);
    if (!key) {
      throw new DomainError('UNAUTHENTICATED', 'The API key is not valid (malformed, unknown or revoked).', {
        headers: { 'WWW-Authenticate': `${CHALLENGE}, error="invalid_token"` },
      });
    }
    setRequestContext(request, {
      requestId: String(request.id),
      keyId: key.id,
      keyPrefix: key.prefix,
      projectId: key.projectId,
      role: key.role,
    });

    if (key.role === 'reader' && !SAFE_METHODS.has(request.method)) {
      throw DomainError.forbidden('A reader key can only read (GET).');
    }
    const roles = requiredRoles(controller, handler);
    if (roles && !roles.includes(key.role)) {
      throw DomainError.forbidden(
        `This action needs a key with role ${roles.join(' or ')}; this key is ${key.role}.`,
      );
    }
    return true;
  }
}
