// Shows why the last login failed (the server names it in ?error=).
const reasons = {
  'wrong-token': 'Wrong token. Repeated failures from one address are slowed down.',
  'no-token-set': 'This agent has no token set: start it with --admin-token-file or TASKSCOPE_ADMIN_TOKEN.',
};
const error = new URLSearchParams(location.search).get('error');
if (error) {
  const el = document.getElementById('login-error');
  el.textContent = reasons[error] ?? 'Login failed.';
  el.hidden = false;
}
