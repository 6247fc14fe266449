#!/bin/sh
echo "$GREETING"
echo "kernel: $(uname -r)  user: $(id -un)  workdir: $(pwd)"
env | sort
