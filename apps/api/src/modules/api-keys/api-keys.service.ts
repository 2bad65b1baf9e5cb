import { Injectable } from '@nestjs/common';
import { assertIfMatch, contentEtag, type IfMatchCondition } from '../../common/etag/etag.js';
import { iso, isoOrNull } from '../../common/http/schemas.js';
import { type Page, pageClauses, toPage } from '../../common/pagination/pagination.js';
import { lockRow } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { ApiKey } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { generateApiKey } from '../auth/api-key-secret.js';
import { AuthService } from '../auth/auth.service.js';
import type { ApiKeyDto, CreateApiKeyBody, CreatedApiKeyDto, ListApiKeysQuery } from './api-key.schemas.js';

/** A key's representation (never its secret or hash); its tag covers what can change: the revocation. */
export function toApiKeyDto(row: ApiKey): ApiKeyDto {
  return {
    id: row.id,
    project_id: row.projectId,
    name: row.name,
    role: row.role,
    prefix: `hgr_${row.prefix}`,
    created_at: iso(row.createdAt),
    last_used_at: isoOrNull(row.lastUsedAt),
    revoked_at: isoOrNull(row.revokedAt),
    etag: contentEtag({
      id: row.id,
      name: row.name,
      role: row.role,
      revoked: row.revokedAt?.getTime() ?? null,
    }),
  };
}

/** API keys, managed by admins for every project. */
@Injectable()
export class ApiKeysService {
  constructor(
    private readonly prisma: PrismaService,
    private readonly auth: AuthService,
  ) {}

  /**
   * Issues a key; the answer carries the secret, which is stored only as a hash.
   *
   * @throws DomainError PROJECT_NOT_FOUND (field project_id)
   */
  async create(body: CreateApiKeyBody): Promise<CreatedApiKeyDto> {
    const project = await this.prisma.project.findUnique({
      where: { id: body.project_id },
      select: { id: true },
    });
    if (!project) {
      throw new DomainError('PROJECT_NOT_FOUND', `Project ${body.project_id} not found.`, {
        field: 'project_id',
      });
    }
    const key = generateApiKey();
    const row = await this.prisma.apiKey.create({
      data: {
        projectId: body.project_id,
        role: body.role,
        name: body.name,
        prefix: key.prefix,
        secretHash: key.secretHash,
      },
    });
    return { ...toApiKeyDto(row), secret: key.token };
  }

  async list(query: ListApiKeysQuery): Promise<Page<ApiKeyDto>> {
    const filters = {
      project_id: query.project_id,
      role: query.role,
      include_revoked: query.include_revoked,
    };
    const scope = { list: 'api-keys', ...filters };
    const page = pageClauses('createdAt', query, scope);
    const rows = await this.prisma.apiKey.findMany({
      where: {
        AND: [
          query.project_id === undefined ? {} : { projectId: query.project_id },
          query.role === undefined ? {} : { role: query.role },
          query.include_revoked ? {} : { revokedAt: null },
          page.where,
        ],
      },
      orderBy: page.orderBy,
      take: page.take,
    });
    return toPage(rows, query, scope, (r) => ({ at: r.createdAt, id: r.id }), toApiKeyDto);
  }

  /** @throws DomainError API_KEY_NOT_FOUND */
  async get(id: string): Promise<ApiKeyDto> {
    const row = await this.prisma.apiKey.findUnique({ where: { id } });
    if (!row) throw DomainError.notFound('API_KEY_NOT_FOUND', 'API key', id);
    return toApiKeyDto(row);
  }

  /**
   * Revokes a key: it stops working at once on this replica, within the auth cache TTL on the
   * others. Revoking a revoked key changes nothing. The last active admin key of the cluster
   * cannot be revoked (nobody could issue keys any more).
   *
   * @throws DomainError API_KEY_NOT_FOUND, PRECONDITION_FAILED, CONFLICT
   */
  async revoke(id: string, ifMatch: IfMatchCondition | undefined): Promise<void> {
    const prefix = await this.prisma.$transaction(async (tx) => {
      if (!(await lockRow(tx, 'api_keys', id)))
        throw DomainError.notFound('API_KEY_NOT_FOUND', 'API key', id);
      const row = await tx.apiKey.findUniqueOrThrow({ where: { id } });
      assertIfMatch(ifMatch, toApiKeyDto(row).etag);
      if (row.revokedAt !== null) return row.prefix;
      if (row.role === 'admin') {
        // Serialise admin revocations, so two concurrent ones cannot each leave the other as "the last".
        await tx.$executeRaw`SELECT pg_advisory_xact_lock(72707371)`;
        const others = await tx.apiKey.count({ where: { role: 'admin', revokedAt: null, id: { not: id } } });
        if (others === 0) {
          throw new DomainError(
            'CONFLICT',
            'This is the last active admin key of the cluster; create another admin key first.',
          );
        }
      }
      await tx.apiKey.update({ where: { id }, data: { revokedAt: new Date() } });
      return row.prefix;
    });
    this.auth.forgetKey(prefix);
  }
}
