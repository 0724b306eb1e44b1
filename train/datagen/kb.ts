/**
 * A generated knowledge base: invented people, each with a home city, a pet and a favourite
 * colour. The pretraining corpus states these facts in prose and the `facts` task asks about
 * them, so the same facts connect pretraining and fine-tuning.
 * @module
 */
import { Rng } from "../../core/rng.ts";

export const KB_SEED = 17;
export const KB_PEOPLE = 80;

export const CITIES = [
  "Oslo",
  "Lima",
  "Rome",
  "Kyiv",
  "Riga",
  "Bern",
  "Cairo",
  "Delhi",
  "Paris",
  "Tokyo",
  "Quito",
  "Dakar",
] as const;
export const PETS = ["cat", "dog", "owl", "fox", "hen", "cow", "pig", "yak", "eel", "bat"] as const;
export const COLORS = ["red", "blue", "green", "pink", "gray", "gold", "teal", "white"] as const;

export type Attribute = "city" | "pet" | "color";
export const ATTRIBUTES: readonly Attribute[] = ["city", "pet", "color"];

/** The values an attribute can take. */
export const VALUES: Record<Attribute, readonly string[]> = {
  city: CITIES,
  pet: PETS,
  color: COLORS,
};

export interface Person {
  name: string;
  city: string;
  pet: string;
  color: string;
}

const ONSETS = "bdfgklmnprstvz";
const VOWELS = "aeiou";
const CODAS = ["", "", "n", "r", "l", "s"];

/** An invented two-syllable name such as "Toman" or "Rilvo". */
function inventName(rng: Rng): string {
  const pick = (s: string | readonly string[]) => s[rng.int(s.length)];
  const name = pick(ONSETS) + pick(VOWELS) + pick(ONSETS) + pick(VOWELS) + pick(CODAS);
  return name[0].toUpperCase() + name.slice(1);
}

/** `count` people with distinct names, in a fixed order for a seed. */
export function makeKnowledgeBase(seed = KB_SEED, count = KB_PEOPLE): Person[] {
  const rng = new Rng(seed);
  const names = new Set<string>();
  while (names.size < count) names.add(inventName(rng));
  return [...names].map((name) => ({
    name,
    city: CITIES[rng.int(CITIES.length)],
    pet: PETS[rng.int(PETS.length)],
    color: COLORS[rng.int(COLORS.length)],
  }));
}

/** "a" or "an" before a word. */
export function article(word: string): string {
  return /^[aeiou]/.test(word) ? "an" : "a";
}
