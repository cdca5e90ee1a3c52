//! The `bootstrap` scripts of the managed runtimes: the one text that the host's provisioning
//! (`ember-runtimes`) writes into a runtime directory as `/var/runtime/bootstrap`, and that the
//! agent's runtime templates model (they fork a runtime only when its directory holds exactly
//! this script, since they do what its `exec` would).

/// The `bootstrap` of runtime `python3.<minor>`: `/var/lang/bin/python3.N -m awslambdaric
/// "$_HANDLER"`, with `/var/lang/lib` first on `LD_LIBRARY_PATH`, `PYTHONPATH` naming the task
/// root, the layers' `/opt/python` directories and `/var/runtime`, and Lambda's
/// `AWS_EXECUTION_ENV`.
pub fn python(minor: u32) -> String {
    format!(
        r#"#!/bin/sh
# Written by Ember: runs the Lambda Runtime Interface Client (awslambdaric) for python3.{minor}.
# /var/lang is the host's Python prefix, /var/runtime this directory, /var/task the function.
case ":${{LD_LIBRARY_PATH:-}}:" in
  *:/var/lang/lib:*) ;;
  *) export LD_LIBRARY_PATH="/var/lang/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" ;;
esac
export PYTHONPATH="${{LAMBDA_TASK_ROOT:-/var/task}}:/opt/python/lib/python3.{minor}/site-packages:/opt/python:${{LAMBDA_RUNTIME_DIR:-/var/runtime}}${{PYTHONPATH:+:$PYTHONPATH}}"
export AWS_EXECUTION_ENV="${{AWS_EXECUTION_ENV:-AWS_Lambda_python3.{minor}}}"
exec /var/lang/bin/python3.{minor} -m awslambdaric "$_HANDLER"
"#
    )
}

/// The `bootstrap` of runtime `nodejs<major>.x`: `/var/lang/bin/node --expose-gc
/// /var/runtime/index.mjs`, with `NODE_PATH` (unless the function set one), `/var/lang/bin` on
/// `PATH`, `/var/lang/lib` on `LD_LIBRARY_PATH`, Lambda's `AWS_EXECUTION_ENV`, and V8's heap
/// sized from `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
pub fn node(major: u32) -> String {
    format!(
        r#"#!/bin/sh
# Written by Ember: runs the Lambda Runtime Interface Client for Node.js (aws-lambda-ric) for
# nodejs{major}.x. /var/lang is the host's Node.js prefix, /var/runtime this directory, /var/task
# the function.
if [ -z "${{NODE_PATH:-}}" ]; then
  export NODE_PATH="/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task"
fi
case ":${{PATH:-}}:" in
  *:/var/lang/bin:*) ;;
  *) export PATH="/var/lang/bin${{PATH:+:$PATH}}" ;;
esac
case ":${{LD_LIBRARY_PATH:-}}:" in
  *:/var/lang/lib:*) ;;
  *) export LD_LIBRARY_PATH="/var/lang/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" ;;
esac
export AWS_EXECUTION_ENV="${{AWS_EXECUTION_ENV:-AWS_Lambda_nodejs{major}.x}}"
set --
if [ -n "${{AWS_LAMBDA_FUNCTION_MEMORY_SIZE:-}}" ]; then
  new_space=$((AWS_LAMBDA_FUNCTION_MEMORY_SIZE / 10))
  semi_space=$((new_space / 2))
  old_space=$((AWS_LAMBDA_FUNCTION_MEMORY_SIZE - new_space))
  set -- "--max-semi-space-size=$semi_space" "--max-old-space-size=$old_space"
fi
exec /var/lang/bin/node --expose-gc "$@" /var/runtime/index.mjs
"#
    )
}
