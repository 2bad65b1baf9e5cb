import { Injectable } from '@nestjs/common';
import { assertIfMatch, contentEtag, type IfMatchCondition } from '../../common/etag/etag.js';
import { iso, isoOrNull } from '../../common/http/schemas.js';
import { type Page, pageClauses, toPage } from '../../common/pagination/pagination.js';
import { lockRow } from '../../common/util/prisma-helpers.js';
import { DomainError } from '../../errors/domain-error.js';
import type { JoinToken } from '../../gen/prisma/client.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import type {
  CreatedJoinTokenDto,
  CreateJoinTokenBody,
  JoinTokenDto,
  ListJoinTokensQuery,
} from './host.schemas.js';
import { generateJoinToken } from './join-token.js';

/** A join token's representation (never the secret or its hash). */
export function toJoinTokenDto(row: JoinToken, now: Date = new Date()): JoinTokenDto {
  const state =
    row.revokedAt !== null
      ? 'revoked'
      : row.usedAt !== null
        ? 'used'
        : row.expiresAt <= now
          ? 'expired'
          : 'active';
  return {
    id: row.id,
    description: row.description,
    created_at: iso(row.createdAt),
    expires_at: iso(row.expiresAt),
    used_at: isoOrNull(row.usedAt),
    host_id: row.hostId,
    revoked_at: isoOrNull(row.revokedAt),
    state,
    etag: contentEtag({
      id: row.id,
      used: row.usedAt?.getTime() ?? null,
      revoked: row.revokedAt?.getTime() ?? null,
    }),
  };
}

/** Join tokens: admins issue them; an agent redeems one to Register its host (`redeemJoinToken`). */
@Injectable()
export class JoinTokensService {
  constructor(private readonly prisma: PrismaService) {}

  /** Issues a single-use token valid for `ttl_seconds`; the answer carries the secret, stored only hashed. */
  async create(body: CreateJoinTokenBody): Promise<CreatedJoinTokenDto> {
    const token = generateJoinToken();
    const row = await this.prisma.joinToken.create({
      data: {
        tokenHash: token.tokenHash,
        description: body.description,
        expiresAt: new Date(Date.now() + body.ttl_seconds * 1000),
      },
    });
    return { ...toJoinTokenDto(row), token: token.token };
  }

  async list(query: ListJoinTokensQuery): Promise<Page<JoinTokenDto>> {
    const scope = { list: 'join-tokens' };
    const page = pageClauses('createdAt', query, scope);
    const rows = await this.prisma.joinToken.findMany({
      where: page.where,
      orderBy: page.orderBy,
      take: page.take,
    });
    const now = new Date();
    return toPage(
      rows,
      query,
      scope,
      (r) => ({ at: r.createdAt, id: r.id }),
      (r) => toJoinTokenDto(r, now),
    );
  }

  /** @throws DomainError JOIN_TOKEN_NOT_FOUND */
  async get(id: string): Promise<JoinTokenDto> {
    const row = await this.prisma.joinToken.findUnique({ where: { id } });
    if (!row) throw DomainError.notFound('JOIN_TOKEN_NOT_FOUND', 'Join token', id);
    return toJoinTokenDto(row);
  }

  /**
   * Revokes a token. An unused one can no longer be redeemed; the host that joined with a used one
   * is refused at its next Register (the gateway readmits a host with its own token until it is
   * revoked, docs/adr/0030). Revoking twice changes nothing.
   *
   * @throws DomainError JOIN_TOKEN_NOT_FOUND, PRECONDITION_FAILED
   */
  async revoke(id: string, ifMatch: IfMatchCondition | undefined): Promise<void> {
    await this.prisma.$transaction(async (tx) => {
      if (!(await lockRow(tx, 'join_tokens', id)))
        throw DomainError.notFound('JOIN_TOKEN_NOT_FOUND', 'Join token', id);
      const row = await tx.joinToken.findUniqueOrThrow({ where: { id } });
      assertIfMatch(ifMatch, toJoinTokenDto(row).etag);
      if (row.revokedAt === null) {
        await tx.joinToken.update({ where: { id }, data: { revokedAt: new Date() } });
      }
    });
  }
}
