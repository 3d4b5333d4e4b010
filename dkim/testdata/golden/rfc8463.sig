DKIM-Signature: a=ed25519-sha256; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;
 c=relaxed/relaxed; d=football.example.com;
 h=From:From:To:To:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:Reply-To:In-Reply-To:References:MIME-Version:Content-Type:Content-Transfer-Encoding:List-Id:List-Unsubscribe:List-Unsubscribe-Post;
 s=brisbane; t=<T>; v=1; x=<X>;
 b=<B>
