import { applyDecorators, SetMetadata } from '@nestjs/common';
import type { ApiKeyRole } from '../../gen/prisma/enums.js';

const PUBLIC_KEY = Symbol('hangar:public');
const ROLES_KEY = Symbol('hangar:roles');

/** Methods a `reader` key may call: reading never changes anything. */
export const SAFE_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The route needs no API key (health, the OpenAPI document, its docs page). */
export function Public(): MethodDecorator & ClassDecorator {
  return applyDecorators(SetMetadata(PUBLIC_KEY, true));
}

/**
 * Only keys with one of `roles` may call the route (on a handler, or on a controller for all of
 * its handlers; the handler's wins). Without it every role may call it — except that `reader`
 * keys never get past a method other than GET/HEAD, whatever the route says.
 */
export function Roles(...roles: [ApiKeyRole, ...ApiKeyRole[]]): MethodDecorator & ClassDecorator {
  return applyDecorators(SetMetadata(ROLES_KEY, roles));
}

/** Whether a handler (or its controller) is `@Public()`. */
export function isPublic(controller: object, handler: object): boolean {
  return (
    (Reflect.getMetadata(PUBLIC_KEY, handler) ?? Reflect.getMetadata(PUBLIC_KEY, controller) ?? false) ===
    true
  );
}

/** The roles a handler (or its controller) requires; undefined when any role may call it. */
export function requiredRoles(controller: object, handler: object): readonly ApiKeyRole[] | undefined {
  return (Reflect.getMetadata(ROLES_KEY, handler) ?? Reflect.getMetadata(ROLES_KEY, controller)) as
    | readonly ApiKeyRole[]
    | undefined;
}
