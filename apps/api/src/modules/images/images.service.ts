import { Injectable } from '@nestjs/common';
import { assertIfMatch, contentEtag, type IfMatchCondition } from '../../common/etag/etag.js';
import { iso } from '../../common/http/schemas.js';
import { type Page, pageClauses, toPage } from '../../common/pagination/pagination.js';
import { isForeignKeyViolation, isUniqueViolation } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { Image } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import type { CreateImageBody, ImageDto, ListImagesQuery } from './image.schemas.js';

/** An image's representation; images never change, so their tag covers the whole row. */
export function toImageDto(row: Image): ImageDto {
  const dto = {
    id: row.id,
    name: row.name,
    pool: row.pool,
    kernel_path: row.kernelPath,
    initrd_path: row.initrdPath,
    cmdline: row.cmdline,
    disk_path: row.diskPath,
    format: row.format === 'raw' ? ('raw' as const) : ('qcow2' as const),
    created_at: iso(row.createdAt),
  };
  return { ...dto, etag: contentEtag(dto) };
}

/** Boot images: registered and deleted by admins, read by every key (VMs are created from them). */
@Injectable()
export class ImagesService {
  constructor(private readonly prisma: PrismaService) {}

  /** @throws DomainError ALREADY_EXISTS */
  async create(body: CreateImageBody): Promise<ImageDto> {
    try {
      const row = await this.prisma.image.create({
        data: {
          name: body.name,
          pool: body.pool,
          kernelPath: body.kernel_path ?? null,
          initrdPath: body.initrd_path ?? null,
          cmdline: body.cmdline ?? null,
          diskPath: body.disk_path ?? null,
          format: body.format,
        },
      });
      return toImageDto(row);
    } catch (error) {
      if (isUniqueViolation(error)) {
        throw new DomainError('ALREADY_EXISTS', `An image named ${body.name} exists.`, { field: 'name' });
      }
      throw error;
    }
  }

  async list(query: ListImagesQuery): Promise<Page<ImageDto>> {
    const filters = { name: query.name, pool: query.pool };
    const scope = { list: 'images', ...filters };
    const page = pageClauses('createdAt', query, scope);
    const rows = await this.prisma.image.findMany({
      where: {
        AND: [
          query.name === undefined ? {} : { name: query.name },
          query.pool === undefined ? {} : { pool: query.pool },
          page.where,
        ],
      },
      orderBy: page.orderBy,
      take: page.take,
    });
    return toPage(rows, query, scope, (r) => ({ at: r.createdAt, id: r.id }), toImageDto);
  }

  /** @throws DomainError IMAGE_NOT_FOUND */
  async get(id: string): Promise<ImageDto> {
    const row = await this.prisma.image.findUnique({ where: { id } });
    if (!row) throw DomainError.notFound('IMAGE_NOT_FOUND', 'Image', id);
    return toImageDto(row);
  }

  /**
   * Forgets an image no VM refers to (the files on the pool stay).
   *
   * @throws DomainError IMAGE_NOT_FOUND, PRECONDITION_FAILED, IMAGE_IN_USE
   */
  async delete(id: string, ifMatch: IfMatchCondition | undefined): Promise<void> {
    const current = await this.get(id);
    assertIfMatch(ifMatch, current.etag);
    const vms = await this.prisma.vm.count({ where: { imageId: id } });
    if (vms > 0) throw inUse(id, vms);
    try {
      const { count } = await this.prisma.image.deleteMany({ where: { id } });
      if (count === 0) throw DomainError.notFound('IMAGE_NOT_FOUND', 'Image', id);
    } catch (error) {
      if (isForeignKeyViolation(error)) throw inUse(id, 1);
      throw error;
    }
  }
}

function inUse(id: string, vms: number): DomainError {
  return new DomainError(
    'IMAGE_IN_USE',
    `Image ${id} is used by ${vms} VM record(s), deleted ones included (they keep their image for history).`,
    { extensions: { vms } },
  );
}
