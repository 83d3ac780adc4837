# rtvisor.check=console: runs the commands typed on the console, one a line,
# until a line `done` (snapshot tests: a restored guest must still take input
# and run what it is given).  Sourced into PID 1: `return`, never `exit`.
echo RTVISOR_CONSOLE_READY
while read -r line; do
	case $line in
	done) return 0 ;;
	*) eval "$line" ;;
	esac
done
return 0
