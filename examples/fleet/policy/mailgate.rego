# The fleet's policy. run.sh publishes this directory as the first signed
# bundle; publish.sh publishes a changed copy, and every instance has it
# within its polling interval.
package mailgate

# Recipients in a blocked domain are refused at RCPT. The list is data, so
# an incident is handled by publishing a new data.json.
deny contains {
	"id": "blocked-domain",
	"msg": sprintf("mail to %s is not allowed by the fleet policy", [input.rcpt.domain]),
} if {
	input.stage == "rcpt"
	input.rcpt.domain in data.blocked_domains
}
