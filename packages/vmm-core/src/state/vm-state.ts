import { VmmError } from '../errors.js';

/**
 * The one VM state table, shared by vmm-core, the agent and the api.
 * Observed states come from QEMU (query-status / process presence); PENDING..CREATING and
 * DELETING/DELETED are control-plane states; UNKNOWN means the host cannot be reached.
 */
export const VM_STATES = [
  'PENDING',
  'SCHEDULING',
  'CREATING',
  'STOPPED',
  'RUNNING',
  'PAUSED',
  'MIGRATING',
  'INCOMING',
  'ERROR',
  'UNKNOWN',
  'DELETING',
  'DELETED',
] as const;
export type VmState = (typeof VM_STATES)[number];

export const VM_ACTIONS = [
  'start',
  'stop',
  'forceStop',
  'reboot',
  'pause',
  'resume',
  'delete',
  'migrate',
  'save',
  'restore',
  'resize',
  'snapshot',
  'revertSnapshot',
  'attachDevice',
  'detachDevice',
] as const;
export type VmAction = (typeof VM_ACTIONS)[number];

/** Which states each action may start from. Anything else is INVALID_STATE. */
export const ACTION_ALLOWED_FROM: Readonly<Record<VmAction, readonly VmState[]>> = {
  start: ['STOPPED'],
  stop: ['RUNNING', 'PAUSED', 'ERROR'],
  forceStop: ['RUNNING', 'PAUSED', 'MIGRATING', 'INCOMING', 'ERROR', 'UNKNOWN'],
  reboot: ['RUNNING'],
  pause: ['RUNNING'],
  resume: ['PAUSED'],
  delete: ['STOPPED', 'ERROR', 'PENDING', 'CREATING'],
  migrate: ['RUNNING', 'PAUSED', 'STOPPED'],
  save: ['RUNNING', 'PAUSED'],
  restore: ['STOPPED'],
  resize: ['STOPPED'],
  snapshot: ['STOPPED', 'RUNNING', 'PAUSED'],
  revertSnapshot: ['STOPPED'],
  attachDevice: ['RUNNING', 'PAUSED'],
  detachDevice: ['RUNNING', 'PAUSED'],
};

/** Transitions a VM may make between observed/control states. */
export const STATE_TRANSITIONS: Readonly<Record<VmState, readonly VmState[]>> = {
  PENDING: ['SCHEDULING', 'ERROR', 'DELETING'],
  SCHEDULING: ['CREATING', 'ERROR', 'DELETING'],
  CREATING: ['RUNNING', 'STOPPED', 'ERROR', 'DELETING'],
  STOPPED: ['RUNNING', 'PAUSED', 'MIGRATING', 'ERROR', 'UNKNOWN', 'DELETING'],
  RUNNING: ['STOPPED', 'PAUSED', 'MIGRATING', 'ERROR', 'UNKNOWN', 'DELETING'],
  PAUSED: ['RUNNING', 'STOPPED', 'MIGRATING', 'ERROR', 'UNKNOWN', 'DELETING'],
  MIGRATING: ['RUNNING', 'PAUSED', 'STOPPED', 'ERROR', 'UNKNOWN'],
  INCOMING: ['RUNNING', 'PAUSED', 'STOPPED', 'ERROR', 'UNKNOWN'],
  ERROR: ['STOPPED', 'RUNNING', 'DELETING', 'UNKNOWN'],
  UNKNOWN: ['RUNNING', 'PAUSED', 'STOPPED', 'MIGRATING', 'ERROR', 'DELETING'],
  DELETING: ['DELETED', 'ERROR'],
  DELETED: [],
};

export function isActionAllowed(action: VmAction, state: VmState): boolean {
  return ACTION_ALLOWED_FROM[action].includes(state);
}

/** Throws INVALID_STATE naming the current state when `action` is not allowed in `state`. */
export function assertActionAllowed(action: VmAction, state: VmState, vmId?: string): void {
  if (!isActionAllowed(action, state)) {
    throw new VmmError(
      'INVALID_STATE',
      `cannot ${action} VM${vmId ? ` ${vmId}` : ''} while it is ${state}; allowed from ${ACTION_ALLOWED_FROM[action].join(', ')}`,
      { details: { action, state, allowed: ACTION_ALLOWED_FROM[action] } },
    );
  }
}

/** Throws INVALID_STATE when `to` is not reachable from `from` in one step. */
export function assertTransition(from: VmState, to: VmState): void {
  if (from !== to && !STATE_TRANSITIONS[from].includes(to)) {
    throw new VmmError('INVALID_STATE', `VM state cannot change from ${from} to ${to}`, {
      details: { from, to },
    });
  }
}

/**
 * Maps QEMU's `query-status` RunState to an observed VM state.
 * See qapi/run-state.json: the guest is only RUNNING when QEMU says `running`.
 */
export function stateFromQemuStatus(status: string): VmState {
  switch (status) {
    case 'running':
      return 'RUNNING';
    case 'paused':
    case 'suspended':
    case 'debug':
    case 'save-vm':
    case 'restore-vm':
    case 'watchdog':
      return 'PAUSED';
    case 'inmigrate':
      return 'INCOMING';
    case 'finish-migrate':
      return 'MIGRATING';
    case 'postmigrate':
    case 'shutdown':
    case 'prelaunch':
      return 'STOPPED';
    default:
      // internal-error, io-error, guest-panicked, colo and anything newer
      return 'ERROR';
  }
}
