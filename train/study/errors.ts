/**
 * The study's error: a study folder that holds another study, a result file that does not
 * parse, statistics asked of nothing.
 * @module
 */
import { DomainError } from "../../core/errors.ts";

/** The study cannot go on as asked; the message says what to change. */
export class StudyError extends DomainError {
  static override readonly code: string = "STUDY";
}
