import { DomainError } from '../../errors/domain-error.js';

/** The operation does not exist (or belongs to another project: no existence leak). 404 */
export function operationNotFound(operationId: string): DomainError {
  return DomainError.notFound('OPERATION_NOT_FOUND', 'operation', operationId);
}

/** The operation already started (or finished) and can no longer be cancelled. 409 */
export function operationNotCancellable(operationId: string, status: string): DomainError {
  return new DomainError(
    'INVALID_STATE',
    `operation ${operationId} is ${status} and can no longer be cancelled`,
    {
      extensions: { state: status },
    },
  );
}
