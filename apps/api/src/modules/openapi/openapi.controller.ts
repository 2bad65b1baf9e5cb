import { z } from 'zod';
import { Public } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { HttpResult } from '../../common/http/http-result.js';
import { DOCS_PAGE_HTML } from './docs-page.js';
import type { OpenApiDocument } from './openapi.builder.js';
import { OpenApiService } from './openapi.service.js';

const OpenApiDocumentSchema = z
  .looseObject({ openapi: z.string(), info: z.looseObject({}), paths: z.looseObject({}) })
  .meta({ id: 'OpenApiDocument', description: 'This document' });

/** `/openapi.json` and `/docs`: the API describing itself. */
@Resource({ path: '', tag: 'Meta', unversioned: true, description: 'The API describing itself' })
export class OpenApiController {
  constructor(private readonly openapi: OpenApiService) {}

  @Public()
  @Endpoint({
    method: 'GET',
    path: 'openapi.json',
    operationId: 'getOpenApiDocument',
    summary: 'The OpenAPI 3.1 document of this API',
    response: OpenApiDocumentSchema,
  })
  document(): OpenApiDocument {
    return this.openapi.getDocument();
  }

  @Public()
  @Endpoint({
    method: 'GET',
    path: 'docs',
    operationId: 'getDocsPage',
    summary: 'A page that renders the OpenAPI document for humans',
    response: z.string(),
    produces: 'text/html',
  })
  docs(): HttpResult<string> {
    return new HttpResult(DOCS_PAGE_HTML, {
      headers: {
        'content-type': 'text/html; charset=utf-8',
        'content-security-policy':
          "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
      },
    });
  }
}
