export { type CommandResult, type RunCommandOptions, runCommand } from './exec.js';
export { Reverter, type RevertFailure, type UndoFn } from './reverter.js';
