import type { FilterReport, NoValidHost } from './placement.types.js';

/** No host can take the VM; `filters` says how many hosts each filter removed. */
export class NoValidHostError extends Error {
  override readonly name = 'NoValidHostError';
  readonly code = 'NO_VALID_HOST';
  readonly filters: readonly FilterReport[];

  constructor(problem: NoValidHost) {
    super(problem.detail);
    this.filters = problem.filters;
  }

  /** The problem body: `{code: 'NO_VALID_HOST', detail, filters: [{name, removed}]}`. */
  toJSON(): NoValidHost {
    return { code: 'NO_VALID_HOST', detail: this.message, filters: this.filters };
  }
}
