import { Global, Module } from '@nestjs/common';
import { APP_FILTER, APP_INTERCEPTOR } from '@nestjs/core';
import { HealthController } from './health/health.controller.js';
import { HttpResultInterceptor, InputValidationInterceptor } from './http/http.interceptors.js';
import { ProblemFilter } from './http/problem.filter.js';
import { IdempotencyInterceptor } from './idempotency/idempotency.interceptor.js';
import { IdempotencyService } from './idempotency/idempotency.service.js';

/**
 * The HTTP conventions of the api, applied to every route: problem+json errors, input validation,
 * idempotency keys, response headers; plus the health probes. The order of the interceptors is
 * the order below (outermost first): results are unwrapped last, input is validated before a key
 * is claimed.
 */
@Global()
@Module({
  controllers: [HealthController],
  providers: [
    IdempotencyService,
    { provide: APP_FILTER, useClass: ProblemFilter },
    { provide: APP_INTERCEPTOR, useClass: HttpResultInterceptor },
    { provide: APP_INTERCEPTOR, useClass: InputValidationInterceptor },
    { provide: APP_INTERCEPTOR, useClass: IdempotencyInterceptor },
  ],
  exports: [IdempotencyService],
})
export class CommonModule {}
