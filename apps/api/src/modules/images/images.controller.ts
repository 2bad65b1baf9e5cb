import { IfMatch, type IfMatchCondition } from '../../common/etag/etag.js';
import { Roles } from '../../common/http/access.decorators.js';
import { Endpoint, Resource } from '../../common/http/endpoint.decorator.js';
import { created, type HttpResult, withEtag } from '../../common/http/http-result.js';
import { ValidBody, ValidParams, ValidQuery } from '../../common/http/request-input.js';
import { type IdParams, IdParamsSchema } from '../../common/http/schemas.js';
import type { Page } from '../../common/pagination/pagination.js';
import {
  type CreateImageBody,
  CreateImageBodySchema,
  type ImageDto,
  ImagePageSchema,
  ImageSchema,
  type ListImagesQuery,
  ListImagesQuerySchema,
} from './image.schemas.js';
import { ImagesService } from './images.service.js';

/** `/v1/images`: boot images on storage pools. Admins register and delete them; every key reads them. */
@Resource({
  path: 'images',
  tag: 'Images',
  description: 'Boot images (kernel, initrd, disk) registered on storage pools',
})
export class ImagesController {
  constructor(private readonly images: ImagesService) {}

  @Roles('admin')
  @Endpoint({
    method: 'POST',
    operationId: 'createImage',
    summary: 'Register an image on a storage pool',
    description: 'The files must already be on the pool; the api records where they are.',
    body: CreateImageBodySchema,
    response: ImageSchema,
    headers: ['ETag', 'Location'],
    errors: ['ALREADY_EXISTS'],
  })
  async create(@ValidBody() body: CreateImageBody): Promise<HttpResult<ImageDto>> {
    const image = await this.images.create(body);
    return created(image, `/v1/images/${image.id}`);
  }

  @Endpoint({
    method: 'GET',
    operationId: 'listImages',
    summary: 'List images',
    query: ListImagesQuerySchema,
    response: ImagePageSchema,
  })
  list(@ValidQuery() query: ListImagesQuery): Promise<Page<ImageDto>> {
    return this.images.list(query);
  }

  @Endpoint({
    method: 'GET',
    path: ':id',
    operationId: 'getImage',
    summary: 'Get an image',
    params: IdParamsSchema,
    response: ImageSchema,
    headers: ['ETag'],
    errors: ['IMAGE_NOT_FOUND'],
  })
  async get(@ValidParams() params: IdParams): Promise<HttpResult<ImageDto>> {
    return withEtag(await this.images.get(params.id));
  }

  @Roles('admin')
  @Endpoint({
    method: 'DELETE',
    path: ':id',
    operationId: 'deleteImage',
    summary: 'Forget an image no VM refers to (its files stay on the pool)',
    params: IdParamsSchema,
    errors: ['IMAGE_NOT_FOUND', 'IMAGE_IN_USE'],
  })
  async delete(
    @ValidParams() params: IdParams,
    @IfMatch() ifMatch: IfMatchCondition | undefined,
  ): Promise<void> {
    await this.images.delete(params.id, ifMatch);
  }
}
