import { readFileSync } from 'node:fs';
import { Injectable } from '@nestjs/common';
import { DiscoveryService } from '@nestjs/core';
import { isPublic, requiredRoles } from '../../common/http/access.decorators.js';
import { endpointOf, resourceOf } from '../../common/http/endpoint.decorator.js';
import {
  buildOpenApiDocument,
  type DocumentedEndpoint,
  type OpenApiDocument,
  type TagInfo,
} from './openapi.builder.js';

/** A route as the HTTP server registered it. */
export interface ServedRoute {
  readonly method: string;
  /** Fastify syntax: `/v1/hosts/:id`. */
  readonly url: string;
}

const PACKAGE_VERSION = (
  JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/**
 * The api's OpenAPI document, built once from the `@Endpoint`s of every controller the
 * application mounts (Nest discovery), and the check that every route the server serves is one
 * of them.
 */
@Injectable()
export class OpenApiService {
  private document: OpenApiDocument | undefined;

  constructor(private readonly discovery: DiscoveryService) {}

  /** Every documented endpoint of the mounted controllers. */
  endpoints(): DocumentedEndpoint[] {
    const out: DocumentedEndpoint[] = [];
    for (const wrapper of this.discovery.getControllers()) {
      const controller = wrapper.metatype;
      if (typeof controller !== 'function') continue;
      const prototype = controller.prototype as Record<string, unknown>;
      for (const name of Object.getOwnPropertyNames(prototype)) {
        const handler = Object.getOwnPropertyDescriptor(prototype, name)?.value as unknown;
        if (name === 'constructor' || typeof handler !== 'function') continue;
        const endpoint = endpointOf(controller, handler);
        if (!endpoint) continue;
        out.push({
          endpoint,
          isPublic: isPublic(controller, handler),
          roles: requiredRoles(controller, handler),
        });
      }
    }
    return out;
  }

  /** The OpenAPI 3.1 document (built on first use, then cached). */
  getDocument(): OpenApiDocument {
    if (!this.document) {
      const tags = new Map<string, TagInfo>();
      for (const wrapper of this.discovery.getControllers()) {
        const resource = typeof wrapper.metatype === 'function' ? resourceOf(wrapper.metatype) : undefined;
        if (resource && !tags.has(resource.tag))
          tags.set(resource.tag, { name: resource.tag, description: resource.description });
      }
      this.document = buildOpenApiDocument(
        this.endpoints(),
        {
          title: 'Hangar API',
          version: PACKAGE_VERSION,
          description:
            'The REST API of Hangar, a control plane for KVM virtual machines. Errors are RFC 9457 ' +
            'problem+json with a stable `code`; lists page with `page_size`/`page_token`; every POST ' +
            'honours `Idempotency-Key`; PATCH/PUT/DELETE honour `If-Match`.',
        },
        [...tags.values()].sort((a, b) => a.name.localeCompare(b.name)),
      );
    }
    return this.document;
  }

  /**
   * Routes the server serves that no `@Endpoint` documents (Fastify's automatic HEAD routes
   * aside). A non-empty answer means a handler bypassed the framework: validation, idempotency
   * and the document would not cover it.
   */
  undocumentedRoutes(served: readonly ServedRoute[]): ServedRoute[] {
    const documented = new Set(
      this.endpoints().map(
        ({ endpoint }) => `${endpoint.method} ${endpoint.route.replace(/\{([^}]+)\}/g, ':$1')}`,
      ),
    );
    return served.filter(
      (route) => route.method !== 'HEAD' && !documented.has(`${route.method} ${route.url}`),
    );
  }
}
