import { Injectable } from '@nestjs/common';
import { assertIfMatch, contentEtag, type IfMatchCondition } from '../../common/etag/etag.js';
import { iso } from '../../common/http/schemas.js';
import { type Page, pageClauses, toPage } from '../../common/pagination/pagination.js';
import { isForeignKeyViolation, isUniqueViolation } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { Flavor } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import type { CreateFlavorBody, FlavorDto, ListFlavorsQuery } from './flavor.schemas.js';

/** A flavor's representation; flavors never change, so their tag covers the whole row. */
export function toFlavorDto(row: Flavor): FlavorDto {
  const dto = {
    id: row.id,
    name: row.name,
    vcpus: row.vcpus,
    memory_mib: row.memoryMib,
    disk_gib: row.diskGib,
    description: row.description,
    created_at: iso(row.createdAt),
  };
  return { ...dto, etag: contentEtag(dto) };
}

/** Flavors: created and deleted by admins, read by everyone. */
@Injectable()
export class FlavorsService {
  constructor(private readonly prisma: PrismaService) {}

  /** @throws DomainError ALREADY_EXISTS when the name is taken */
  async create(body: CreateFlavorBody): Promise<FlavorDto> {
    try {
      const row = await this.prisma.flavor.create({
        data: {
          name: body.name,
          vcpus: body.vcpus,
          memoryMib: body.memory_mib,
          diskGib: body.disk_gib,
          description: body.description,
        },
      });
      return toFlavorDto(row);
    } catch (error) {
      if (isUniqueViolation(error)) {
        throw new DomainError('ALREADY_EXISTS', `A flavor named ${body.name} exists.`, { field: 'name' });
      }
      throw error;
    }
  }

  async list(query: ListFlavorsQuery): Promise<Page<FlavorDto>> {
    const filters = { name: query.name };
    const scope = { list: 'flavors', ...filters };
    const page = pageClauses('createdAt', query, scope);
    const rows = await this.prisma.flavor.findMany({
      where: { AND: [query.name === undefined ? {} : { name: query.name }, page.where] },
      orderBy: page.orderBy,
      take: page.take,
    });
    return toPage(rows, query, scope, (r) => ({ at: r.createdAt, id: r.id }), toFlavorDto);
  }

  /** @throws DomainError FLAVOR_NOT_FOUND */
  async get(id: string): Promise<FlavorDto> {
    const row = await this.prisma.flavor.findUnique({ where: { id } });
    if (!row) throw DomainError.notFound('FLAVOR_NOT_FOUND', 'Flavor', id);
    return toFlavorDto(row);
  }

  /**
   * Deletes a flavor no VM refers to.
   *
   * @throws DomainError FLAVOR_NOT_FOUND, PRECONDITION_FAILED, FLAVOR_IN_USE
   */
  async delete(id: string, ifMatch: IfMatchCondition | undefined): Promise<void> {
    const current = await this.get(id);
    assertIfMatch(ifMatch, current.etag);
    const vms = await this.prisma.vm.count({ where: { flavorId: id } });
    if (vms > 0) throw inUse(id, vms);
    try {
      const { count } = await this.prisma.flavor.deleteMany({ where: { id } });
      if (count === 0) throw DomainError.notFound('FLAVOR_NOT_FOUND', 'Flavor', id);
    } catch (error) {
      // A VM created between the count and the delete.
      if (isForeignKeyViolation(error)) throw inUse(id, 1);
      throw error;
    }
  }
}

function inUse(id: string, vms: number): DomainError {
  return new DomainError(
    'FLAVOR_IN_USE',
    `Flavor ${id} is used by ${vms} VM record(s), deleted ones included (they keep their flavor for history).`,
    { extensions: { vms } },
  );
}
