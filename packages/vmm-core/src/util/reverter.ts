/** One undo step of a {@link Reverter}. */
export type UndoFn = () => void | Promise<void>;

/** An undo step that threw while a {@link Reverter} was failing. */
export interface RevertFailure {
  /** The label given to {@link Reverter.add}, if any. */
  label: string | undefined;
  error: unknown;
}

/**
 * Undoes half-done multi-step work, as Incus's `revert.Reverter` does. Register an undo step
 * after each step that succeeded; on the success path call {@link Reverter.success}, and always
 * call {@link Reverter.fail} on the way out:
 *
 * ```ts
 * const reverter = new Reverter();
 * try {
 *   await createImage(path, spec);
 *   reverter.add(() => rm(path, { force: true }), 'remove disk');
 *   await buildNoCloudSeed(seedPath, seed);
 *   reverter.success();
 * } finally {
 *   await reverter.fail();
 * }
 * ```
 */
export class Reverter {
  private steps: { undo: UndoFn; label: string | undefined }[] = [];
  private disarmed = false;
  private failures: RevertFailure[] = [];

  /** Registers an undo step; steps run in reverse order of registration. */
  add(undo: UndoFn, label?: string): void {
    this.steps.push({ undo, label });
  }

  /** Disarms the reverter: a later {@link Reverter.fail} does nothing. */
  success(): void {
    this.disarmed = true;
    this.steps = [];
  }

  /**
   * Runs the undo steps in reverse order unless {@link Reverter.success} was called. Every step
   * runs even when an earlier one throws; their errors are collected, never thrown. Each step runs
   * at most once, so calling `fail()` again is harmless.
   *
   * @returns the failures of this call (empty when all undo steps succeeded or when disarmed).
   */
  async fail(): Promise<RevertFailure[]> {
    if (this.disarmed) return [];
    const steps = this.steps.reverse();
    this.steps = [];
    const failures: RevertFailure[] = [];
    for (const step of steps) {
      try {
        await step.undo();
      } catch (error) {
        failures.push({ label: step.label, error });
      }
    }
    this.failures.push(...failures);
    return failures;
  }

  /** Every undo step failure collected so far, for logging. */
  get errors(): readonly RevertFailure[] {
    return this.failures;
  }
}
