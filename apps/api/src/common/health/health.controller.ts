import { z } from 'zod';
import { DomainError } from '../../errors/domain-error.js';
import { PrismaService } from '../../infra/prisma/prisma.service.js';
import { Public } from '../http/access.decorators.js';
import { Endpoint, Resource } from '../http/endpoint.decorator.js';

const HealthSchema = z.strictObject({ status: z.literal('ok') }).meta({ id: 'Health' });

/** Liveness and readiness probes for load balancers and orchestrators. */
@Resource({ path: '', tag: 'Health', unversioned: true })
export class HealthController {
  constructor(private readonly prisma: PrismaService) {}

  @Public()
  @Endpoint({
    method: 'GET',
    path: 'healthz',
    operationId: 'getLiveness',
    summary: 'The process answers',
    response: HealthSchema,
  })
  live(): z.infer<typeof HealthSchema> {
    return { status: 'ok' };
  }

  @Public()
  @Endpoint({
    method: 'GET',
    path: 'readyz',
    operationId: 'getReadiness',
    summary: 'The process can serve requests: its database answers',
    response: HealthSchema,
  })
  async ready(): Promise<z.infer<typeof HealthSchema>> {
    try {
      await this.prisma.$queryRaw`SELECT 1`;
    } catch (error) {
      throw new DomainError('SERVICE_UNAVAILABLE', 'The database does not answer.', {
        cause: error,
        headers: { 'Retry-After': '1' },
      });
    }
    return { status: 'ok' };
  }
}
