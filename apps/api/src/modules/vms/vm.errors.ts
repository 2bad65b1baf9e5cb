import type { VmState } from '@hangar/vmm-core';
import { DomainError } from '../../errors/domain-error.js';

/**
 * The VM use cases' errors, as {@link DomainError}s of the api's one code table (the HTTP
 * status comes from there). `VmNotFoundError` (VM_NOT_FOUND) lives with the data layer.
 */

/** The action is not allowed in the VM's current state (vmm-core's state table). 409 */
export function invalidState(
  vmId: string,
  action: string,
  state: VmState,
  allowed: readonly VmState[],
): DomainError {
  return new DomainError(
    'INVALID_STATE',
    `cannot ${action} VM ${vmId} while it is ${state}; allowed from ${allowed.join(', ') || 'no state'}`,
    { extensions: { state, action, allowed_states: [...allowed] } },
  );
}

/** Another action on the VM is PENDING or RUNNING: one action per VM at a time. 409 */
export function operationInProgress(vmId: string, operation?: { id: string; kind: string }): DomainError {
  return new DomainError(
    'OPERATION_IN_PROGRESS',
    operation
      ? `VM ${vmId} is busy with operation ${operation.id} (${operation.kind}); wait for it to finish`
      : `VM ${vmId} is busy with another operation; wait for it to finish`,
    operation ? { extensions: { operation_id: operation.id, operation_kind: operation.kind } } : {},
  );
}

/** The project's quota does not allow this much more. 403 */
export function quotaExceeded(
  resource: 'vms' | 'vcpus' | 'memory_mib',
  limit: number,
  used: number,
  requested: number,
): DomainError {
  return new DomainError(
    'QUOTA_EXCEEDED',
    `quota exceeded for ${resource}: ${used} in use + ${requested} requested > limit ${limit}`,
    { extensions: { resource, limit, used, requested } },
  );
}

/** A referenced flavor does not exist. */
export function flavorNotFound(reference: string): DomainError {
  return new DomainError('FLAVOR_NOT_FOUND', `flavor ${JSON.stringify(reference)} does not exist`, {
    field: 'flavor',
  });
}

/** A referenced image does not exist. */
export function imageNotFound(reference: string): DomainError {
  return new DomainError('IMAGE_NOT_FOUND', `image ${JSON.stringify(reference)} does not exist`, {
    field: 'image',
  });
}

/** The project does not exist. */
export function projectNotFound(projectId: string): DomainError {
  return DomainError.notFound('PROJECT_NOT_FOUND', 'project', projectId);
}

/** Another live VM of the project has this name (names become guest host names). 409 */
export function vmNameTaken(name: string): DomainError {
  return new DomainError(
    'ALREADY_EXISTS',
    `a VM named ${JSON.stringify(name)} already exists in this project`,
    {
      field: 'name',
    },
  );
}

/** The VM's host cannot be reached (DOWN, or its agent does not answer). 503 */
export function hostUnreachable(hostId: string | null, detail: string): DomainError {
  return new DomainError('HOST_UNREACHABLE', detail, {
    headers: { 'Retry-After': '5' },
    ...(hostId ? { extensions: { host_id: hostId } } : {}),
  });
}

/** The host's agent answered with an error the api cannot do anything about. 502 */
export function agentFailed(detail: string, agentCode: string): DomainError {
  return new DomainError('AGENT_ERROR', detail, { extensions: { agent_code: agentCode } });
}
