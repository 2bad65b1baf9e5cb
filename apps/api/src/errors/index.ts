/**
 * Errors of the control plane: {@link DomainError} with a stable code, THE code → HTTP/gRPC table
 * ({@link ERROR_TABLE}) and the RFC 9457 problem rendering ({@link toProblem}).
 */
export * from './domain-error.js';
export * from './error-codes.js';
export * from './problem.js';
