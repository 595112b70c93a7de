// The dashboard's entry point: a hash router over four views.
//   #/jobs[?status=&offset=]  the list     #/new      a new job
//   #/jobs/<id>               one job      (no key)   sign in
// Routes live in the hash so the server only ever serves one page.

import { clearKey, getKey, onUnauthorized } from "./api.js";
import { clear, h } from "./dom.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { newJobView } from "./newjob.js";
import { signInView } from "./signin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
let current = null;
let signInMessage = "";
let signInNotice = "";

function showNav(signedIn) {
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
  const path = location.hash.startsWith("#/new") ? "#/new" : "#/jobs";
  for (const link of nav.querySelectorAll("a[data-route]")) {
    link.classList.toggle("current", link.dataset.route === path);
  }
}

function notFound() {
  clear(main, h("section", { class: "card" }, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs"))));
  return { stop() {} };
}

function route() {
  if (current) current.stop();
  window.scrollTo(0, 0);
  document.title = "kegnet";
  if (!getKey()) {
    showNav(false);
    const [message, notice] = [signInMessage, signInNotice];
    signInMessage = signInNotice = "";
    current = signInView(main, { message, notice, onSignedIn: route });
    return;
  }
  showNav(true);
  const path = (location.hash || "#/jobs").split("?")[0];
  const jobMatch = /^#\/jobs\/([\w-]+)$/.exec(path);
  if (path === "#/jobs" || path === "#/" || path === "#") current = jobsView(main);
  else if (path === "#/new") current = newJobView(main);
  else if (jobMatch) current = jobView(main, decodeURIComponent(jobMatch[1]));
  else current = notFound();
}

onUnauthorized((message) => {
  clearKey();
  signInMessage = message;
  route();
});

signOutButton.addEventListener("click", () => {
  clearKey();
  signInNotice = "Signed out.";
  route();
});

window.addEventListener("hashchange", route);
route();
