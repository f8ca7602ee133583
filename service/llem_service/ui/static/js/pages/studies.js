// Studies: filled in once the studies API exists on this branch.
import { clear, h, message } from "../dom.js";

export async function studiesPage(main) {
  clear(main).append(h("h1", { tabindex: "-1" }, "Studies"), message("Studies are not available on this server yet."));
  return () => {};
}

export const studyPage = studiesPage;
